//! `payfleet dlq`: the dead-letter store. Every DLQ is drained into the store
//! first (so nothing still in a queue is missed), then rows are listed,
//! shown, replayed to their stage, or purged (marked; deleted only past the
//! retention, by `purge --delete-expired`). Every replay, purge and deletion
//! is in `replay_audit`.
//!
//! Replay claims each parked row (`FOR UPDATE SKIP LOCKED`), publishes the
//! original body and properties back to the stage's work queue with a
//! confirm and `mandatory`, the attempt count reset and a replay mark, then
//! marks the row replayed and audits it in the claim's transaction: two
//! replays at once never both publish a row, and a replay stopped half-way
//! has audited every row it marked. A crash between the publish and the
//! commit leaves the row parked: replayed again it is at most a duplicate,
//! which the stage's inbox absorbs (the message keeps its id).
//!
//! An exhausted merchant webhook (type `webhook.delivery`) is not published:
//! its delivery is reset and the webhook sender sends it again (see
//! `payfleet webhook resend`).

use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions};
use payfleet_common::{
    CancellationToken, Settings, Topology,
    broker::{self, Outgoing, Publisher, header},
    runtime::dead_letter::Keeper,
};
use serde_json::{Value, json};
use sqlx::PgPool;

use super::{Error, Result, error::Doing};

/// Which rows an action applies to.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub ids: Vec<i64>,
    pub stage: Option<String>,
    pub error_kind: Option<String>,
    pub payment: Option<String>,
    pub older_than: Option<chrono::Duration>,
    pub statuses: Vec<&'static str>,
    pub limit: i64,
}

impl Selection {
    fn json(&self) -> Value {
        json!({
            "ids": self.ids, "stage": self.stage, "error_kind": self.error_kind, "payment": self.payment,
            "older_than_seconds": self.older_than.map(|d| d.num_seconds()), "statuses": self.statuses, "limit": self.limit,
        })
    }
}

#[derive(Debug, sqlx::FromRow, serde::Serialize)]
pub struct Row {
    pub id: i64,
    pub message_id: String,
    pub correlation_id: Option<String>,
    pub stage: String,
    pub error_kind: String,
    pub error_message: String,
    pub attempts: i32,
    pub first_failed_at: chrono::DateTime<chrono::Utc>,
    pub last_failed_at: chrono::DateTime<chrono::Utc>,
    pub stored_at: chrono::DateTime<chrono::Utc>,
    pub status: String,
}

/// Moves whatever sits in the DLQs of `stages` into the store (commit, then ack).
pub async fn drain(settings: &Settings, pool: &PgPool, stages: &[String]) -> Result<u64> {
    let connection = broker::connect_once(
        &payfleet_common::broker::Endpoint::from_settings(settings)?,
        "payfleet-dlq-drain",
    )
    .await
    .doing_with(|| {
        format!(
            "connecting to RabbitMQ (amqp_url, vhost {})",
            settings.amqp_vhost()
        )
    })?;
    let channel = connection.create_channel().await?;
    let keeper = Keeper::new(pool.clone());
    let mut drained = 0;
    for stage in stages {
        let queue = Topology::dead_letter_queue(stage);
        loop {
            let got = match channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await
            {
                Ok(got) => got,
                Err(_) => break, // no such queue in this vhost
            };
            let Some(message) = got else { break };
            keeper
                .store(&message.delivery)
                .await
                .doing("storing a dead letter")?;
            message
                .delivery
                .acker
                .ack(BasicAckOptions::default())
                .await?;
            drained += 1;
        }
    }
    let _ = connection.close(200, "drained".into()).await;
    Ok(drained)
}

pub async fn select(pool: &PgPool, s: &Selection) -> Result<Vec<Row>> {
    let older = s.older_than.map(|d| chrono::Utc::now() - d);
    let statuses: Vec<String> = s.statuses.iter().map(|s| (*s).to_owned()).collect();
    Ok(sqlx::query_as(
        "SELECT id, message_id, correlation_id, stage, error_kind, error_message, attempts, first_failed_at, last_failed_at, stored_at, status
         FROM dead_letters
         WHERE (cardinality($1::bigint[]) = 0 OR id = ANY($1))
           AND ($2::text IS NULL OR stage = $2)
           AND ($3::text IS NULL OR error_kind = $3)
           AND ($4::text IS NULL OR correlation_id = $4)
           AND ($5::timestamptz IS NULL OR last_failed_at < $5)
           AND status = ANY($6)
         ORDER BY id LIMIT $7",
    )
    .bind(&s.ids)
    .bind(&s.stage)
    .bind(&s.error_kind)
    .bind(&s.payment)
    .bind(older)
    .bind(&statuses)
    .bind(s.limit)
    .fetch_all(pool)
    .await?)
}

/// One stored dead letter, whole: what `dlq show` shows.
#[derive(Debug, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: i64,
    pub stage: String,
    pub status: String,
    pub error_kind: String,
    pub message_id: String,
    pub properties: Value,
    pub headers: Value,
    pub body: Vec<u8>,
}

/// `dlq show`: the dead letter with this id or message id (the latest).
pub async fn show(pool: &PgPool, id_or_message: &str) -> Result<DeadLetter> {
    let row: Option<DeadLetter> = sqlx::query_as(
        "SELECT id, stage, status, error_kind, message_id, properties, headers, body FROM dead_letters
         WHERE id::text = $1 OR message_id = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(id_or_message)
    .fetch_optional(pool)
    .await?;
    row.ok_or_else(|| {
        Error::not_found(format!(
            "no dead letter with id or message id `{id_or_message}`"
        ))
    })
}

/// Replays the selected parked rows; returns how many were put back. What
/// a replay would take is [`select`] of the same selection.
pub async fn replay(
    settings: &Settings,
    pool: &PgPool,
    selection: &Selection,
    operator: &str,
) -> Result<usize> {
    let rows = select(pool, selection).await?;
    let topology = Topology::from_settings(settings)?;
    let publisher = Publisher::new(
        broker::Endpoint::from_settings(settings)?,
        "payfleet-dlq-replay",
        CancellationToken::new(),
    );
    let mut replayed = Vec::new();
    for row in &rows {
        // Claim the row for the publish: a replay running at the same time
        // skips it while it is held, and finds it replayed once this one
        // commits. The mark and its audit commit together, row by row, so a
        // replay stopped half-way has audited everything it marked.
        let mut tx = pool.begin().await?;
        let claimed: Option<(Value, Value, Vec<u8>)> = sqlx::query_as(
            "SELECT properties, headers, body FROM dead_letters
             WHERE id = $1 AND status = 'parked' FOR UPDATE SKIP LOCKED",
        )
        .bind(row.id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((properties, headers, body)) = claimed else {
            tx.rollback().await?;
            continue; // replayed, purged or being replayed by another
        };
        let mut headers = headers;
        if let Value::Object(map) = &mut headers {
            for key in [
                header::ATTEMPT,
                header::LOCK_WAITS,
                header::SUSPECT,
                header::STAGE,
                header::ERROR_KIND,
                header::ERROR_MESSAGE,
                header::ATTEMPTS,
                header::FIRST_FAILURE_AT,
                header::LAST_FAILURE_AT,
                header::DEAD_LETTER_ID,
                "x-death",
                "x-first-death-exchange",
                "x-first-death-queue",
                "x-first-death-reason",
            ] {
                map.remove(key);
            }
            map.insert(header::REPLAYED_FROM.to_owned(), json!(row.id.to_string()));
        }
        let text = |key: &str| {
            properties
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        // An exhausted webhook: send it again by resetting its delivery.
        if text("type").as_deref() == Some(crate::stages::notification::WEBHOOK_DELIVERY_TYPE) {
            let delivery = row
                .message_id
                .parse::<uuid::Uuid>()
                .doing_with(|| format!("dead letter {}: not a webhook delivery id", row.id))?;
            // The resend marks this dead letter replayed in its own
            // transaction: let go of the claim first (resetting a delivery
            // twice only sends it again, with the same webhook-id).
            tx.rollback().await?;
            let resent = json!({ "dead_letter_id": row.id });
            crate::ops::webhook::resend(pool, &[delivery], operator, "dlq replay", resent).await?;
            let mut tx = pool.begin().await?;
            audit(&mut tx, "replay", operator, &selection.json(), &[row.id]).await?;
            tx.commit().await?;
            replayed.push(row.id);
            continue;
        }
        let props = broker::properties(
            &row.message_id,
            text("correlation_id").as_deref(),
            text("type").as_deref(),
        )
        .with_headers(broker::headers_from_json(&headers));
        let message = Outgoing {
            exchange: topology.exchanges().stages.clone(),
            routing_key: row.stage.clone(),
            body,
            properties: props,
        };
        // A failed publish rolls the claim back: the row stays parked.
        tokio::time::timeout(Duration::from_secs(30), publisher.publish(&message))
            .await
            .map_err(|_| Error::told("publishing a replay timed out"))?
            .doing_with(|| format!("replaying dead letter {} to stage {}", row.id, row.stage))?;
        sqlx::query(
            "UPDATE dead_letters SET status = 'replayed', status_changed_at = now() WHERE id = $1",
        )
        .bind(row.id)
        .execute(&mut *tx)
        .await?;
        audit(&mut tx, "replay", operator, &selection.json(), &[row.id]).await?;
        tx.commit().await?;
        replayed.push(row.id);
    }
    publisher.close().await;
    Ok(replayed.len())
}

/// Marks the selected rows purged, with their audit in the same
/// transaction; nothing is deleted.
pub async fn purge(pool: &PgPool, selection: &Selection, operator: &str) -> Result<usize> {
    let rows = select(pool, selection).await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let mut tx = pool.begin().await?;
    let purged: Vec<i64> = sqlx::query_scalar(
        "UPDATE dead_letters SET status = 'purged', status_changed_at = now()
         WHERE id = ANY($1) AND status <> 'purged' RETURNING id",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    audit(&mut tx, "purge", operator, &selection.json(), &purged).await?;
    tx.commit().await?;
    Ok(purged.len())
}

async fn audit(
    conn: &mut sqlx::PgConnection,
    action: &str,
    operator: &str,
    selection: &Value,
    ids: &[i64],
) -> Result<()> {
    sqlx::query("INSERT INTO replay_audit (action, operator, selection, dead_letter_ids, count) VALUES ($1, $2, $3, $4, $5)")
        .bind(action)
        .bind(operator)
        .bind(selection)
        .bind(ids)
        .bind(ids.len() as i32)
        .execute(conn)
        .await?;
    Ok(())
}

/// Deletes purged rows older than `retention` (the retention setting); the
/// deleted ids are audited in the same transaction.
pub async fn delete_purged(
    pool: &PgPool,
    retention: chrono::Duration,
    operator: &str,
) -> Result<u64> {
    let before = chrono::Utc::now() - retention;
    let mut tx = pool.begin().await?;
    let deleted: Vec<i64> = sqlx::query_scalar(
        "DELETE FROM dead_letters WHERE status = 'purged' AND status_changed_at < $1 RETURNING id",
    )
    .bind(before)
    .fetch_all(&mut *tx)
    .await?;
    let selection = json!({
        "statuses": ["purged"],
        "purged_before": before,
        "retention_days": retention.num_days(),
    });
    audit(&mut tx, "delete", operator, &selection, &deleted).await?;
    tx.commit().await?;
    Ok(deleted.len() as u64)
}
